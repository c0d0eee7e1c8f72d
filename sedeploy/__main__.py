"""``python -m sedeploy`` runs the command line."""

from sedeploy.cli import main

main()
