"""``python -m trajfm.train``: the ``train`` stage from the command line (``trajfm.train.stage.main``)."""

import sys

from trajfm.train.stage import main

sys.exit(main())
