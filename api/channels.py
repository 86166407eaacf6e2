"""Placeholder: being built (issue 3)."""

from fastapi import APIRouter

router = APIRouter(tags=["channels"])
