from lgkd_core.cli import main

raise SystemExit(main())
