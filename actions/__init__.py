"""steward's actions (``steward.actions`` entry points): what happens with an event the
policy decided on — a journal line, an e-mail, a webhook POST."""
