"""The HTTP shell: app factory, middleware, routes, dependencies and the ``formwork`` CLI."""
