from advtui.cli import main

main()
