import sys

from _wflow_entry import main

sys.exit(main())
