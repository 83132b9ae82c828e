"""``python -m facematch_async.cli``: the same as the ``facematch-async`` command."""

import sys

from facematch_async.cli import main

sys.exit(main())
