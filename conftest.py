pytest_plugins = ["caduceus_embedded.testing"]
