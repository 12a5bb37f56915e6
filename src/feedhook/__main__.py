from feedhook.cli import main

raise SystemExit(main())
