"""Role-level circuit discovery (issue 12): edge attribution, exact edge patching, circuits, loops."""
