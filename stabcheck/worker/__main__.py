"""`python -m stabcheck.worker TASK PAYLOAD RESULT`: the worker process (see `stabcheck.worker`)."""

import sys

from stabcheck.worker import main

sys.exit(main())
