from sslight.cli import main

raise SystemExit(main())
