"""Role-level circuit discovery: edge attribution, exact edge patching, circuits, loops."""
