"""The browser voice page served by the gateway at ``/`` (plain HTML/JS, no build step)."""
