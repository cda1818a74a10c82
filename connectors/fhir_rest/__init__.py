"""The FHIR R4 REST door: resources, Bundles and Subscription notifications pushed over HTTPS.

intake.py and notification.py decide (pure); auth.py decides the sender; commit.py writes durably;
server.py is the aiohttp shell; service.py assembles it from settings.
"""
