"""python -m monitor: the steward-monitor command."""

from monitor.main import main

raise SystemExit(main())
