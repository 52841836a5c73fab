from cocoseg.cli import main

raise SystemExit(main())
