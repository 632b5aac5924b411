"""Evidence an auditor accepts: the controls report (`broker report`), signed, verifiable."""
