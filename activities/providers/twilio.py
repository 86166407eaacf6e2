"""SMS through Twilio's REST API: `POST {base}/2010-04-01/Accounts/{sid}/Messages.json`,
HTTP basic auth (account SID, auth token), form fields To, From, Body; the answer's
`sid` is the provider's message id. A 4xx (an invalid number, a bad credential) is
permanent; 408/429/5xx and network failures are transient. No retries here."""

from __future__ import annotations

import httpx

from activities.providers.base import OutboundMessage, PermanentSendError, ProviderResult
from activities.providers.postalynk import DEFAULT_TIMEOUT, json_field, post
from core.services.channels import ResolvedChannels


class TwilioProvider:
    name = "TWILIO"

    def __init__(self, *, http: httpx.AsyncClient, account_sid: str, auth_token: str,
                 from_number: str, base_url: str = "https://api.twilio.com",
                 timeout: httpx.Timeout | float = DEFAULT_TIMEOUT):
        self._http = http
        self.timeout = timeout
        self.account_sid = account_sid
        self._auth_token = auth_token
        self.from_number = from_number
        self.base_url = base_url.rstrip("/")

    @classmethod
    def from_channels(cls, channels: ResolvedChannels, *,
                      http: httpx.AsyncClient) -> TwilioProvider:
        return cls(
            http=http,
            account_sid=str(channels.get("twilioAccountSid")),
            auth_token=str(channels.get("twilioAuthToken")),
            from_number=str(channels.get("twilioFromNumber")),
            base_url=str(channels.get("twilioBaseUrl")),
        )

    async def send(self, message: OutboundMessage) -> ProviderResult:
        if not message.to:
            raise PermanentSendError("the user has no phone number")
        url = f"{self.base_url}/2010-04-01/Accounts/{self.account_sid}/Messages.json"
        response = await post(
            self._http, "Twilio", url, timeout=self.timeout,
            data={"To": message.to, "From": self.from_number, "Body": message.body},
            auth=(self.account_sid, self._auth_token),
        )
        return ProviderResult(provider=self.name,
                              provider_message_id=json_field(response, "sid"))
