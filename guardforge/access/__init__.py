"""Who may ask, and with what rules: the Caller every interface hands Studio, and the API keys behind it."""
