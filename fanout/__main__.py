from fanout.cli import entry_point

entry_point()
