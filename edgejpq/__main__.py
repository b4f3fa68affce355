from edgejpq.cli import main

main()
