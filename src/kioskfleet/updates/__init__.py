"""Signed updates, the part both sides share: target naming, the custom data every target
carries (a release counter), and the TUF client (python-tuf's ngclient) the agent and
``kioskfleet tuf-client`` use. The repository itself is the controller's
(``kioskfleet.controller.tufrepo``)."""
