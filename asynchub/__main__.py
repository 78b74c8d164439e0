from asynchub._cli.main import main

raise SystemExit(main())
