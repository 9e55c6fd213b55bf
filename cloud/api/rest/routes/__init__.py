"""The REST endpoints, one module per resource; each builds an ``APIRouter`` over the
services."""
