"""Stand-in for Kaggle/docker-python `patches/kaggle_gcp.py`: `get_integrations`, `KaggleKernelCredentials`.

Same behaviour: the attached add-ons come from KAGGLE_KERNEL_INTEGRATIONS (e.g. "GCS:BIGQUERY");
`KaggleKernelCredentials.refresh` fetches a token through UserSecretsClient and turns any failure
into google.auth's RefreshError, chained to the cause (the built-in ConnectionError when offline).
The BigQuery client patching of the real module is left out (colab_magics never calls it).
"""

import logging
import os

from google.auth import credentials
from google.auth.exceptions import RefreshError

from kaggle_secrets import GcpTarget, UserSecretsClient


def get_integrations():
    kernel_integrations = KernelIntegrations()
    for integration in (os.getenv("KAGGLE_KERNEL_INTEGRATIONS") or "").split(':'):
        try:
            kernel_integrations.add_integration(GcpTarget[integration.upper()])
        except KeyError:
            logging.debug(f"Unknown integration target: {integration.upper()}")
    return kernel_integrations


class KernelIntegrations():
    def __init__(self):
        self.integrations = {}

    def add_integration(self, target):
        self.integrations[target] = True

    def has_integration(self, target):
        return target in self.integrations

    def has_bigquery(self):
        return GcpTarget.BIGQUERY in self.integrations

    def has_gcs(self):
        return GcpTarget.GCS in self.integrations


class KaggleKernelCredentials(credentials.Credentials):
    """Custom Credentials used to authenticate using the Kernel's connected OAuth account."""

    def __init__(self, target=GcpTarget.BIGQUERY):
        super().__init__()
        self.target = target

    def refresh(self, request):
        try:
            client = UserSecretsClient()
            if self.target == GcpTarget.GCS:
                self.token, self.expiry = client._get_gcs_access_token()
            else:
                self.token, self.expiry = client._get_access_token(self.target)
        except ConnectionError as e:
            print("There was a connection error trying to fetch the access token. "
                  f"Please ensure internet is on in order to use the {self.target.service} Integration.")
            raise RefreshError('Unable to refresh access token due to connection error.') from e
        except Exception as e:
            if not get_integrations().has_integration(self.target):
                print(f"Please ensure you have selected a {self.target.service} account in the Notebook Add-ons menu.")
            raise RefreshError('Unable to refresh access token.') from e
