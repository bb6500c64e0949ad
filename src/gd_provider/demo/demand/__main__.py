"""``python -m gd_provider.demo.demand``: see :mod:`gd_provider.demo.demand.setup`."""

from gd_provider.demo.demand.setup import main

raise SystemExit(main())
