from asynchub._cli.main import command

raise SystemExit(command())
