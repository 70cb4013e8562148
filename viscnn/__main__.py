from viscnn.cli import main

raise SystemExit(main())
