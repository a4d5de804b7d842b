"""Tests of the web dashboard (flowq.ui), in a real browser."""
