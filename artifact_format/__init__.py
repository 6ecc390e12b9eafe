"""The artifact format: the manifest and the shared vocabulary, standard library only.

Shipped in every image and imported by the packager, volume_sync and the worker alike, so the three
agree on one contract without importing each other."""
