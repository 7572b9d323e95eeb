"""v1 routers: thin — parse, call the service, shape the answer."""
