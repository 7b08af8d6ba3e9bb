"""Set-up for every test folder, before any test module imports the CDK (and so starts jsii)."""

from tests.node_env import quiet_jsii

quiet_jsii()
