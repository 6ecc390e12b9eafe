"""Where the weights come from: the recipe, its Input (hub repo, local folder, single-file checkpoint,
URL), the lock that pins it, drift, and fetching exactly the locked files."""
