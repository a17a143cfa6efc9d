import sys

from unirec_dist.cli import main

sys.exit(main())
