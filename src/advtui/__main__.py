from advtui.main import main

main()
