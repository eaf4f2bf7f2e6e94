"""Stand-in for Kaggle/docker-python `patches/kaggle_gcp.py` (commit 78aaa43): `get_integrations`,
`KernelIntegrations`, `KaggleKernelCredentials`.

The code of these three is upstream's, verbatim (but for a noqa comment): the attached add-ons come from
KAGGLE_KERNEL_INTEGRATIONS (e.g. "GCS:BIGQUERY"); `KaggleKernelCredentials.refresh` fetches a token
through UserSecretsClient, and on any ConnectionError (which is also what every HTTP error of
kaggle_web_client becomes) prints "ensure internet is on" and raises google.auth's RefreshError
chained to it. Left out: the BigQuery/GCS/AI Platform client patching and the data proxy, which
import google-cloud-bigquery and which colab_magics never calls.
"""

import logging
import os

from google.auth import credentials
from google.auth.exceptions import RefreshError

from kaggle_secrets import GcpTarget, UserSecretsClient


def get_integrations():
    kernel_integrations_var = os.getenv("KAGGLE_KERNEL_INTEGRATIONS")
    kernel_integrations = KernelIntegrations()
    if kernel_integrations_var is None:
        return kernel_integrations
    for integration in kernel_integrations_var.split(':'):
        try:
            target = GcpTarget[integration.upper()]
            kernel_integrations.add_integration(target)
        except KeyError as e:  # noqa: F841  (upstream as it is)
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

    def has_cloudai(self):
        return GcpTarget.CLOUDAI in self.integrations or \
            GcpTarget.AUTOML in self.integrations

class KaggleKernelCredentials(credentials.Credentials):
    """Custom Credentials used to authenticate using the Kernel's connected OAuth account.
    Example usage:
    client = bigquery.Client(project='ANOTHER_PROJECT',
                                credentials=KaggleKernelCredentials())
    """
    def __init__(self, target=GcpTarget.BIGQUERY):
        super().__init__()
        self.target = target

    def refresh(self, request):
        try:
            client = UserSecretsClient()
            if self.target == GcpTarget.BIGQUERY:
                self.token, self.expiry = client.get_bigquery_access_token()
            elif self.target == GcpTarget.GCS:
                self.token, self.expiry = client._get_gcs_access_token()
            elif self.target == GcpTarget.CLOUDAI:
                self.token, self.expiry = client._get_cloudai_access_token()
        except ConnectionError as e:
            logging.error(f"Connection error trying to refresh access token: {e}")
            print("There was a connection error trying to fetch the access token. "
                  f"Please ensure internet is on in order to use the {self.target.service} Integration.")
            raise RefreshError('Unable to refresh access token due to connection error.') from e
        except Exception as e:
            logging.error(f"Error trying to refresh access token: {e}")
            if (not get_integrations().has_integration(self.target)):
                logging.error(f"No {self.target.service} integration found.")
                print(
                   f"Please ensure you have selected a {self.target.service} account in the Notebook Add-ons menu.")
            raise RefreshError('Unable to refresh access token.') from e
