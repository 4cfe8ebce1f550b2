"""DiffewS stages: episodic training from SD on a fold's base classes, HSNet-protocol evaluation, benchmark rows."""
