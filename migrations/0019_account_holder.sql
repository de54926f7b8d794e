-- Module identity: the organization whose owner made an account with AddMember, and so set its
-- password. There is no email check, so such an account is that organization's to hand out: it
-- may not join another organization, whose owner would otherwise be adding a stranger's account
-- under a newcomer's email (a pre-made account). NULL: the account was made by first-owner
-- setup and its holder chose the password. No foreign key: an account stays held after its
-- organization is gone.
ALTER TABLE users ADD COLUMN created_by_organization_id uuid;

-- Accounts made before this column: the audit log names the organization that made each.
UPDATE users u SET created_by_organization_id = a.organization_id
FROM audit_log a
WHERE a.action = 'identity.member.add' AND a.target_type = 'user' AND a.target_id = u.id::text
  AND a.details ->> 'created_user' = 'true';
