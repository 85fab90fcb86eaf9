from wrapper.cli import main

raise SystemExit(main())
