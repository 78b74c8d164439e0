from asynchub._cli import main

raise SystemExit(main())
