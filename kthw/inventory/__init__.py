"""The cluster inventory (``cluster.yaml``): loaded, validated, frozen.

Every problem is reported as an :class:`InventoryError` naming the file, the line,
the field and the fix; nothing else escapes :func:`load`. :func:`load` also checks the
Kubernetes version against the version table and the pins (shipped and the site's), so
doit stops before any task runs; :func:`loads` checks the document alone.

:mod:`.model` holds what an inventory is, :mod:`.values` the parsers of single values,
:mod:`.sections` those of the sections, :mod:`.load` the reading of a whole document.
"""

from kthw.errors import InventoryError
from kthw.inventory.load import load, loads
from kthw.inventory.model import (
    API_MODES,
    APISERVER_PORT,
    CA_BACKENDS,
    DEFAULT_LIFETIMES,
    ENCRYPTION_PROVIDERS,
    KUBELET_CREDENTIALS,
    NODE_LOCAL_NAME,
    VAULT_AUTH_METHODS,
    ApiEndpoint,
    CASettings,
    Inventory,
    IPAddress,
    IPNetwork,
    Lifetimes,
    Node,
    VaultAuth,
    VaultNaming,
    VendorSettings,
    url_host,
)

__all__ = [
    "APISERVER_PORT",
    "API_MODES",
    "CA_BACKENDS",
    "DEFAULT_LIFETIMES",
    "ENCRYPTION_PROVIDERS",
    "KUBELET_CREDENTIALS",
    "NODE_LOCAL_NAME",
    "VAULT_AUTH_METHODS",
    "ApiEndpoint",
    "CASettings",
    "IPAddress",
    "IPNetwork",
    "Inventory",
    "InventoryError",
    "Lifetimes",
    "Node",
    "VaultAuth",
    "VaultNaming",
    "VendorSettings",
    "load",
    "loads",
    "url_host",
]
