"""One module per inference backend, each implementing the :class:`~sedeploy.backends.base.Runner` contract."""
