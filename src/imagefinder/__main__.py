from imagefinder.cli import main

main()
