"""Card payments through Stripe Checkout: creating sessions, webhooks and refunds."""
