from edge_inspect.cli import main

raise SystemExit(main())
