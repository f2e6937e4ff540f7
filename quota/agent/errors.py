"""One exception root for the embedded quota agent."""


class QuotaAgentError(Exception):
    """Root of every error quota.agent raises."""


class JournalError(QuotaAgentError):
    """The journal cannot be opened or written; the message names the file or the step."""


class BillingUnavailable(QuotaAgentError, ConnectionError):
    """The billing API did not answer, answered an error, or answered garbage."""
