"""Watch-folder daemon: image pairs dropped into an inbox become stylized images (issue 6)."""
