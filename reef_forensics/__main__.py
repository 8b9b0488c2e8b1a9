from reef_forensics.cli.main import main

raise SystemExit(main())
