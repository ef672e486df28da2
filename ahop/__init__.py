"""The `ahop` command: the composition root that builds settings and hands them to `app`, `worker` or `storage`."""

import warnings

# asyncssh imports cryptography's DSA support, which newer cryptography deprecates with a warning on every start;
# DSA keys are refused anyway (targets.host_keys), so the warning would only be noise on an operator's terminal.
warnings.filterwarnings("ignore", message="DSA is deprecated", module="asyncssh")
