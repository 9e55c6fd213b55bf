"""The REST adapter (FastAPI): the application, its request/response models, errors, auth
dependencies, the dashboard and API docs (``static/``) and the routes. A thin layer over
:mod:`fieldgate.cloud.services`."""
