import os
import sys

from fanout.cli import EXIT_INTERRUPTED, EXIT_TERMINATED, main

code = main()
if code in (EXIT_INTERRUPTED, EXIT_TERMINATED):
    # the interrupted run's batches are still running in threads; its records are saved: end now, without joining them
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
sys.exit(code)
